"""Which model a request names: a preset, a preset's repo id, a local folder or any Hugging Face
repo id -> ModelSpec.

Each function takes the model slice of the settled request (``ModelRequest``) and the catalog
the API loaded once. ``checked`` normalises and checks the slice without network or disk writes
(the API runs it when it settles the request); ``resolve_model`` describes the model fully (what
planning needs); ``download_source`` only names what the weights step fetches, for the
``download`` command, where the KV-cache figures of an arbitrary repo's config.json do not matter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kaito_runtime.errors import HubUnreachableError, InputError
from kaito_runtime.request import looks_like_path
from kaito_runtime.request.settle import ModelRequest
from kaito_runtime.secrets import Credentials
from kaito_runtime.types import ModelSpec, WeightsSource

if TYPE_CHECKING:
    from kaito_runtime.model.catalog import Catalog
    from kaito_runtime.model.sources import LocalCopies

log = logging.getLogger("kaito_runtime")

def _is_hub_id_form(preset: str) -> bool:
    """KAITO's syntax: ``inference.preset.name`` holds a built-in name or a repo id (org/name,
    optionally @revision). A name with a '/' is meant as a repo id."""
    return "/" in preset


def as_model_request(request: ModelRequest) -> ModelRequest:
    """``--preset ORG/NAME[@REV]`` (or KAITO_PRESET) as the request for that repo id: the same
    path as ``--model ORG/NAME --revision REV``, where a built-in preset's own repo id resolves to
    the preset. A built-in name, or a request with both --preset and --model, is left as is."""
    from kaito_runtime.model import sources

    preset = (request.preset or "").strip()
    if not preset or request.model or not _is_hub_id_form(preset):
        return request
    repo_id, at, revision = preset.partition("@")
    if at:
        if not revision.strip():
            raise InputError(
                f"--preset {preset!r} has an empty revision after '@'",
                fix=f"write --preset {repo_id}@BRANCH_TAG_OR_COMMIT, or drop the '@'",
            )
        if request.revision is not None and request.revision != revision:
            raise InputError(
                f"--preset {preset} and --revision {request.revision} name two revisions",
                why=f"the '@{revision}' in the preset already picks one",
                fix="give the revision once: in the preset (org/name@rev) or with --revision",
            )
    sources.check_repo_id(repo_id)
    return replace(request, preset=None, model=repo_id, revision=revision if at else request.revision)



def _check_combination(request: ModelRequest) -> None:
    if request.preset and request.model:
        raise InputError(
            "Both --preset and --model were given",
            fix="use --preset for a built-in preset or --model for a Hugging Face id / local folder, not both",
        )
    if not (request.preset or request.model):
        raise InputError(
            "No model given",
            fix="pass --preset NAME (see --list-presets) or --model HF_ID_OR_FOLDER (env KAITO_PRESET / KAITO_MODEL)",
        )
    if request.revision is not None and (not request.revision.strip() or not request.revision.isprintable() or " " in request.revision):
        # repr shows a newline as \n: the one-line error stays one line.
        raise InputError(
            f"--revision {request.revision!r} is not a branch, tag or commit name",
            why="it is empty or holds spaces or control characters, which no git ref has",
            fix="pass a branch, tag or 40-hex commit (env KAITO_REVISION)",
        )


def checked(request: ModelRequest, catalog: Catalog, env: Mapping[str, str] | None = None) -> ModelRequest:
    """The model slice normalised (``--preset ORG/NAME@REV`` as a repo id and revision) and
    checked without network or disk writes: one of --preset / --model given, the preset known
    (and no --revision against its pin), a repo id well formed. Run when the request is settled,
    before anything is created (the weights folder), so a typo leaves no trace."""
    from kaito_runtime.model import sources

    request = as_model_request(request)
    _check_combination(request)
    if request.preset:
        _preset(request, catalog)
    elif request.model and _is_store(request.model):
        from kaito_runtime.model.store import check_store_model

        check_store_model(request.model, env or {}, request.revision)
    elif request.model and not looks_like_path(request.model):
        sources.check_repo_id(request.model)
    return request


def _is_store(model: str) -> bool:
    from kaito_runtime.objstore import is_store_uri

    return is_store_uri(model)


def _preset(request: ModelRequest, catalog: Catalog) -> ModelSpec:
    assert request.preset
    spec = catalog.get(request.preset)
    if request.revision and request.revision != spec.revision:
        raise InputError(
            f"--revision {request.revision} cannot be used with --preset {spec.name}",
            why=f"the preset pins {spec.repo_id} at commit {spec.revision}",
            fix=f"drop --revision, or use --model {spec.repo_id} --revision {request.revision} to pick another commit",
        )
    return spec


def _folder(request: ModelRequest) -> ModelSpec:
    from kaito_runtime.model import sources

    assert request.model
    if request.revision:
        raise InputError(
            f"--revision {request.revision} cannot be used with the local folder {request.model}",
            why="a folder holds one version of the model; there is nothing to pick a revision from",
            fix="drop --revision, or pass a Hugging Face id (--model ORG/NAME --revision REV)",
        )
    return sources.spec_from_folder(Path(request.model).expanduser(), trust_remote_code=request.remote_code)


def _known_preset(request: ModelRequest, catalog: Catalog) -> ModelSpec | None:
    """The preset whose repo this is, when the request keeps its pinned commit."""
    assert request.model
    known = catalog.find_by_repo(request.model)
    if known is not None and request.revision in (None, known.revision):
        # A preset's repo id: keep its pinned commit and the vLLM arguments it needs.
        log.info("%s is the repo of preset %s; using the preset", request.model, known.name)
        return known
    return None


def _named(spec: ModelSpec, request: ModelRequest) -> ModelSpec:
    return replace(spec, name=request.served_model_name) if request.served_model_name else spec


def resolve_model(
    request: ModelRequest,
    catalog: Catalog,
    *,
    credentials: Credentials = Credentials(),
    local_copies: LocalCopies | None = None,
    env: Mapping[str, str] | None = None,
) -> ModelSpec:
    """A preset name, a local folder, an object-store URI (read with ``env``'s credentials) or
    a Hugging Face repo id (``request`` as ``checked`` returned it) -> ModelSpec, read from the
    hub, or from the complete local copy that ``local_copies`` finds when offline or the hub is down."""
    from kaito_runtime.model import sources

    if request.preset:
        return _named(_preset(request, catalog), request)
    assert request.model
    if _is_store(request.model):
        from kaito_runtime.model.store import check_store_model, spec_from_store

        check_store_model(request.model, env or {}, request.revision)
        spec = spec_from_store(request.model, env or {}, trust_remote_code=request.remote_code)
        return _named(with_hub_defaults(spec), request)
    if looks_like_path(request.model):
        return _named(_folder(request), request)
    known = _known_preset(request, catalog)
    if known is not None:
        return _named(known, request)
    token, token_source = credentials.token, credentials.source
    remote = sources.remote_metadata(
        request.model,
        revision=request.revision,
        token=token,
        token_source=token_source,
        endpoint=request.endpoint,
        offline=request.offline,
        local_copies=local_copies or sources.NO_LOCAL_COPIES,
    )
    spec = sources.spec_from_hub(request.model, remote, trust_remote_code=request.remote_code)
    # Sized after the architecture and the config passed: an unserved model costs no header reads.
    figures = None
    if not request.offline:
        try:
            figures = sources.hub_weights_figures(
                remote, token=token, token_source=token_source, endpoint=request.endpoint, load_format=spec.load_format
            )
        except HubUnreachableError as exc:  # config.json came from the complete local copy
            log.warning("model: safetensors headers of %s not read (%s); sizing by file sizes", request.model, exc.what)
    spec = with_hub_defaults(replace(spec, generated_from="hub metadata"))
    return _named(sources.with_figures(spec, figures) if figures is not None else spec, request)


def with_hub_defaults(spec: ModelSpec) -> ModelSpec:
    """A hub model's spec with what a built-in preset would carry: the tool-call and reasoning
    parsers for its architecture and family (presets/vllm/parsers.yaml), and why."""
    from kaito_runtime.model.defaults import choose_parsers

    choice = choose_parsers(spec.architecture, spec.repo_id)
    note = f"parsers: {choice.rule}" if choice.vllm_args else f"parsers: none ({choice.rule} in presets/vllm/parsers.yaml)"
    return replace(spec, vllm_args=spec.vllm_args + choice.vllm_args, notes=note)


def download_source(request: ModelRequest, catalog: Catalog, env: Mapping[str, str] | None = None) -> WeightsSource:
    """What the ``download`` command fetches (``request`` as ``checked`` returned it). Presets
    and folders resolve as for serving; any other repo id is named without reading its
    config.json: the weights step resolves the revision to a commit itself, and a config that
    lacks the KV-cache figures must not stop a download."""
    from kaito_runtime.model import sources

    if request.preset:
        return _preset(request, catalog).weights_source
    assert request.model
    if _is_store(request.model):
        from kaito_runtime.model.store import check_store_model

        uri = check_store_model(request.model, env or {}, request.revision)
        return WeightsSource(name=sources.served_name_for(uri.prefix or uri.bucket), store_uri=uri.shown)
    if looks_like_path(request.model):
        return _folder(request).weights_source
    known = _known_preset(request, catalog)
    if known is not None:
        return known.weights_source
    sources.check_repo_id(request.model)
    return WeightsSource(name=sources.served_name_for(request.model), repo_id=request.model, revision=request.revision)


def gated_token_warning(model: ModelSpec | WeightsSource, *, token_found: bool) -> str | None:
    """The warning for a gated model when no Hugging Face token was found (None otherwise).
    Names where a token is looked for, never a token."""
    if not model.gated or token_found:
        return None
    who = model.repo_id or model.name
    return (
        f"{who} is gated: a Hugging Face token with access is needed (HF_TOKEN or --token-file); "
        "none found"
    )


def gated_without_token(
    model: ModelSpec | WeightsSource, request: ModelRequest, credentials: Credentials, local_copies: LocalCopies
) -> str | None:
    """The warning for a gated model with no token found, when the weights step would have to
    fetch it (no complete copy on disk, not offline): that step fails there (exit 11), so say it
    while the cause is still cheap to fix."""
    if not model.gated or model.local_path or request.offline:
        return None
    warning = gated_token_warning(model, token_found=credentials.found)
    if warning is None:
        return None
    source = model.weights_source if isinstance(model, ModelSpec) else model
    return None if local_copies.is_complete(source) else warning

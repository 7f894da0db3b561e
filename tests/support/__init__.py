"""Test helpers shared by several test modules (the Hugging Face hub emulator lives here)."""

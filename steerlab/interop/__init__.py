"""Exchange with other tools: llama.cpp GGUF control vectors."""

"""End-to-end flows built from the library pieces; the CLI commands are thin wrappers over these."""

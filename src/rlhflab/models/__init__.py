"""Model loading (hub id or local directory), role wiring (policy / critic / reference) and the tiny demo model."""

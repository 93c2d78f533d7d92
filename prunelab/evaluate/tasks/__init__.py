"""Built-in evaluation tasks (importing this package registers them)."""

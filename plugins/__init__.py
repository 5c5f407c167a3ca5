"""Built-in plugins: input adapters and task heads, registered through entry points like any third-party plugin."""

"""What the tests share: paths and markers, the command runner, reference models and servers, and
small training runs. Imported as `support.X` (the root conftest puts tests/ on sys.path)."""

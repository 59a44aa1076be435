"""{{ cookiecutter.package_name }}: a FastAPI service whose singleton jobs run on exactly one worker."""

"""The {{ cookiecutter.project_slug }} service: its singleton jobs run on exactly one worker."""

"""The {{ cookiecutter.project_slug }} service: its singleton jobs run on exactly one worker."""

__version__ = "0.1.0"
"""The release: also the default version of every ``@startup_task`` (a new one runs them again)."""

"""The only package that imports dagster: assets by stage, checks, jobs, schedules, sensors,
resources and the one ``defs``."""

"""Built-in evaluation tasks (importing this package registers them in :data:`prunelab.evaluate.TASKS`)."""

from prunelab.evaluate.tasks import composite, generative, multiple_choice, perplexity_tasks  # noqa: F401

"""Built-in evaluation tasks: importing this package registers every one of them, with its
:class:`~prunelab.evaluate.registry.TaskSpec` (the one route: :func:`prunelab.evaluate.load_tasks` imports it)."""

from prunelab.evaluate import generative_tasks  # noqa: F401  (gsm8k, ifeval, truthfulqa_mc1/mc2)
from prunelab.evaluate.tasks import composite, generative, multiple_choice, perplexity_tasks  # noqa: F401

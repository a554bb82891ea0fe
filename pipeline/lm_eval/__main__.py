"""``python -m pipeline.lm_eval ARGS``: lm-eval's command line with the project's model class registered."""

from pipeline.lm_eval.command import main

main()

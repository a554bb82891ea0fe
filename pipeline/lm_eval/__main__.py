"""``python -m pipeline.lm_eval ARGS``: lm-eval's command line with the project's model class registered; one of
``torchrun``'s processes ends as :func:`pipeline.lm_eval.ranks.run_as_rank` says."""

from pipeline.lm_eval.command import main
from pipeline.lm_eval.ranks import launched, run_as_rank

if launched():
    run_as_rank(main)
else:
    main()

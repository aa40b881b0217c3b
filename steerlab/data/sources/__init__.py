"""Readers of labelled benchmark data shipped inside registry packages (read as files, never imported).

Each module turns one package's files into `MCItem`s with the answer as the correct (or behaviour-matching) choice;
`steerlab.data.tasks` names them. Example::

    from steerlab.data.tasks import load_task
    items = load_task("mmlu/anatomy")   # read by steerlab.data.sources.olmo.mmlu_items
"""

"""The lab: the tools that look at cells and models rather than train or serve them.

``compare`` (with ``compare_config``, ``compare_runs``, ``compare_report``, ``compare_plots``)
trains cells side by side and reports them against the ``ngram`` baseline, with
``gradient_flow``'s evidence on vanishing gradients; ``units`` and ``inspection`` find
interpretable units and measure gate saturation, which ``visualize`` and ``page`` draw;
``textstats`` compares generated text with the training text. May import every layer below it;
no click.
"""

"""What the entry points run, one module each, which never import one another: ``train``,
``evaluate``, ``locate`` (the query tool), ``app`` (the web page's server), ``pack`` (shards),
``download`` (the release) and ``build_city`` (a town of one's own). What they share: ``cli``
(one-line errors, run-folder, launcher and data checks), ``queries`` (a query run's input),
``locator`` (a model and its gallery index, loaded once, answering descriptions), ``calibrate``
(the calibrations fitted on validation), and the page's own parts: ``page`` (its steps),
``asking`` (one question typed) and ``shown_files`` (its pictures, handed over as files)."""

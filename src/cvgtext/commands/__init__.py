"""What the entry points run: ``train``, ``evaluate``, ``locate``, ``app`` (the web page) and
``pack``, one module each, which never import one another; ``cli`` (one-line errors, run-folder
and launcher checks), ``queries`` (a query run's input) and ``locator`` (a model and its gallery
index, loaded once, answering descriptions) are what they share."""

"""Getting the CVG-Text release: listing the hub repository (``hub``), choosing the files a
request needs (``choose``), fetching them resumably (``transfer``), unpacking archives
(``unpack``), finding the release tree and arranging it for the loaders (``layout``), checking
it (``check``), and telling a run without data how to get it (``presence``). ``facts`` holds
what is known of the release: where it lives, its published sizes, its quirks."""

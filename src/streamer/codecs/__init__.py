"""Codecs: a front-end's native messages to the connection machine's inputs, and events to
native messages. One module per wire protocol; none of them does I/O."""

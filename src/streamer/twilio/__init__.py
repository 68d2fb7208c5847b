"""Twilio Media Streams around the codec (``codecs/twilio_media.py``): where a call's
results go (``hub``: subscribers with a replay of the finals; ``callbacks``: a POST of
each final to an allowed host), Twilio's request signature (``signature``) and the
settings (``settings``)."""

"""Audio front end: formats, decoding, resampling, framing."""

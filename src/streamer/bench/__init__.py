"""The load generator behind ``streamer bench``: many concurrent streams of real speech,
each checked against what its audio must produce, with latency, throughput and CPU figures.
"""

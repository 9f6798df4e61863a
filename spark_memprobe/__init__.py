"""spark_memprobe: where every byte of a GPU host's memory is counted, and which are counted twice."""
__version__ = "0.1.0"

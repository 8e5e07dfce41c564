"""
akoutpost: authentik-style proxy outposts on Twisted.

One C{twistd akoutpost} process hosts several named outposts, each with its own
listeners, providers and in-memory session store.
"""

__version__ = "0.1.0"

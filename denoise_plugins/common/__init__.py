"""What both plug-ins share, standard library only: the worker client and the protocol's constants."""

"""Method registry: name -> (class, its defaults). The defaults of method X live in
selfsup/X.py and appear in the config tree as method.X.*; method.name picks the method."""
METHODS = {}


def register(name, defaults):
    def wrap(cls):
        METHODS[name] = (cls, defaults)
        return cls
    return wrap

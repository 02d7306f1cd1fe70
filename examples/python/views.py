"""The module to edit while `forkhook -e py -- python3 examples/python/app.py` runs."""


def greeting():
    return "hello from views"

"""The module to edit while `forkhook -e py -- python3 examples/devserver/server.py` runs.
After a save, reload http://127.0.0.1:8000/ in the browser."""

import framework


def render():
    """The HTML for GET /."""
    return framework.page(
        "forkhook dev server",
        "<h1>hello from views</h1>\n"
        f"<p>{len(framework.USERS)} users in the fixture, "
        f"{framework.TOTAL_CENTS / 100:,.2f} in orders.</p>",
    )

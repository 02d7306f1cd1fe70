"""A slow framework: stands for a web framework plus the fixture a dev server preloads
(users, orders, an index over them). About 1 s of work at import."""

import html
import time

_started = time.perf_counter()

USER_COUNT = 160_000
ORDERS_PER_USER = 5

USERS = [
    {"id": _i, "name": f"user {_i}", "email": f"user{_i}@example.com"}
    for _i in range(USER_COUNT)
]

ORDERS_BY_USER = {}
for _user in USERS:
    ORDERS_BY_USER[_user["id"]] = [
        {"user": _user["id"], "item": f"item {(_user['id'] * 31 + _n) % 997}",
         "cents": (_user["id"] * 7919 + _n * 104729) % 100_000}
        for _n in range(ORDERS_PER_USER)
    ]

TOTAL_CENTS = sum(order["cents"] for orders in ORDERS_BY_USER.values() for order in orders)


def page(title, body_html):
    """Wraps a body in the site's layout."""
    return (
        "<!doctype html>\n"
        f"<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
        f"<body>\n{body_html}\n</body></html>\n"
    )


print(f"framework: loaded {len(USERS)} users in {time.perf_counter() - _started:.2f} s")

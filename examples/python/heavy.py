"""A slow module: stands for a framework or a big library that does real work at
import. It builds an in-memory catalog of products and an index over it (~1.5 s)."""

import time

_started = time.perf_counter()


class Product:
    __slots__ = ("sku", "name", "price", "tags")

    def __init__(self, sku, name, price, tags):
        self.sku = sku
        self.name = name
        self.price = price
        self.tags = tags


COUNT = 450_000

CATALOG = {}
for _i in range(COUNT):
    _sku = f"SKU-{_i:07d}"
    CATALOG[_sku] = Product(
        _sku,
        f"product {_i}",
        (_i * 7919) % 10_000 / 100,
        (f"tag{_i % 13}", f"tag{_i % 31}"),
    )

BY_TAG = {}
for _product in CATALOG.values():
    for _tag in _product.tags:
        BY_TAG.setdefault(_tag, []).append(_product.sku)

print(f"loaded heavy in {time.perf_counter() - _started:.2f} s")

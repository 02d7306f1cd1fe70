"""forkhook example: a Python program with a slow import before the module you edit.

    forkhook -e py -- python3 examples/python/app.py

Edit views.py while it runs: forkhook resumes from just before `import views`, so the
slow `import heavy` is not done again.
"""

print("app: starting")

import heavy  # noqa: E402  the slow part: builds a big catalog at import
import views  # noqa: E402  the module to edit

print(views.greeting())
print(f"app: {len(heavy.CATALOG)} products in {len(heavy.BY_TAG)} tags")
print("app: finished")

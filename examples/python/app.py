"""forkhook example: a Python program with a slow import before the module you edit.

    forkhook -e py -- python3 examples/python/app.py

Edit views.py while it runs: forkhook resumes from just before `import views`, so the
slow `import heavy` is not done again.
"""

import sys

# Print each line as it is written, also when stdout is a pipe or a file. Python keeps
# its own output buffer, which a checkpoint copies: without this, text printed before a
# checkpoint but still in the buffer would be written again by every resumed run.
sys.stdout.reconfigure(line_buffering=True)

print("app: starting")

import heavy  # noqa: E402  the slow part: builds a big catalog at import
import views  # noqa: E402  the module to edit

print(views.greeting())
print(f"app: {len(heavy.CATALOG)} products in {len(heavy.BY_TAG)} tags")
print("app: finished")

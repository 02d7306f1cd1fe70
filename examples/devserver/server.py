"""forkhook example: a development web server that preloads a slow framework.

    forkhook -e py -- python3 examples/devserver/server.py

Edit views.py while it runs: forkhook resumes from just before `import views`, so the
framework and its fixture are not loaded again; the new run serves the new views.
Settings: PORT (default 8000), HOST (default 127.0.0.1).
"""

import http.server
import os
import framework  # noqa: E402  the slow part: ~1 s at import
import views  # noqa: E402  the module to edit


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/":
            self.send_error(404)
            return
        body = views.render().encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    # Single-threaded on purpose: a run that is thrown away has nothing to wind down.
    server = http.server.HTTPServer((host, port), Handler)
    print(f"serving on http://{host}:{port}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

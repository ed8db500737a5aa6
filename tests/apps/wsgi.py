"""A Flask app under a WSGI adapter: it cannot be pickled, so workers must import it."""

from __future__ import annotations

import os

from a2wsgi import WSGIMiddleware
from flask import Flask

import asgiserve

flask_app = Flask(__name__)


@flask_app.route("/hello")
def hello() -> dict:
    return {"hello": "from flask", "pid": os.getpid()}


@asgiserve.deployment
@asgiserve.ingress(WSGIMiddleware(flask_app))  # type: ignore[arg-type]
class FlaskIngress:
    pass

"""asgiserve: serve models and services from your own FastAPI or Starlette app."""

from asgiserve import adapters, backends, exceptions, metrics
from asgiserve.api import (
    delete,
    get_app_handle,
    get_deployment_handle,
    router,
    run,
    shutdown,
    shutdown_async,
    status,
)
from asgiserve.autoscaling import AutoscalingConfig
from asgiserve.batching import batch
from asgiserve.config import HTTPOptions
from asgiserve.context import RequestContext, get_request_context
from asgiserve.deployment import Application, Deployment, deployment
from asgiserve.drivers import DAGDriver
from asgiserve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from asgiserve.ingress import ingress
from asgiserve.logs import LoggingConfig
from asgiserve.multiplex import get_multiplexed_model_id, multiplexed
from asgiserve.router import Router

__version__ = "0.1.0"

__all__ = [
    "Application",
    "AutoscalingConfig",
    "DAGDriver",
    "Deployment",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "HTTPOptions",
    "LoggingConfig",
    "RequestContext",
    "Router",
    "adapters",
    "backends",
    "batch",
    "delete",
    "deployment",
    "exceptions",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_request_context",
    "ingress",
    "metrics",
    "multiplexed",
    "router",
    "run",
    "shutdown",
    "shutdown_async",
    "status",
]

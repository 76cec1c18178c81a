"""One router per resource, collected once into ``api_router``."""

from fastapi import APIRouter

from . import (
    clusters,
    config,
    endpoints,
    health,
    listener_routes,
    listeners,
    policies,
    policy,
    stats,
    ui,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(config.router)
api_router.include_router(listeners.router)
api_router.include_router(listener_routes.router)
api_router.include_router(clusters.router)
api_router.include_router(endpoints.router)
if policies.AVAILABLE:
    api_router.include_router(policies.router)
api_router.include_router(stats.router)
api_router.include_router(policy.router)
api_router.include_router(ui.router)

__all__ = ["api_router"]

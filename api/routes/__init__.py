"""One router per resource, collected once into ``api_router``."""

from fastapi import APIRouter

from . import config, health, policy, stats

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(config.router)
api_router.include_router(stats.router)
api_router.include_router(policy.router)

__all__ = ["api_router"]

"""Clusters: pools of replicas behind a router (sim.cluster.build), the read-only replica
views routers decide on (sim.cluster.views) and the routers (sim.cluster.routers)."""

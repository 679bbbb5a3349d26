"""Workloads: arrival processes, length distributions, traces -> request streams."""

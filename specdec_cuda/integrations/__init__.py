"""Integrations of the ops into other engines (imported on demand, never by
``import specdec_cuda``): :mod:`specdec_cuda.integrations.vllm`."""

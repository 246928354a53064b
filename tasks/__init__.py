"""Prefect tasks: retries, fan-out, progress and artifacts around the core library.

Each task calls one function of `anime_face_id` and holds no domain logic of its own.
"""

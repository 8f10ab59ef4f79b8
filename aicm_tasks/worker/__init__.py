"""The worker side: the Celery bootstep and the delivery service it runs.

Runs in a ``celery -A aicm_tasks worker`` process: takes batches from the
broker, POSTs them to ``/track``, classifies the outcomes, retries and
dead-letters, and reports to the observers (Redis figures, Celery events,
Prometheus).
"""

"""Monitoring: drift of new data and live traffic against the training reference, and online evaluation of the
serving request log. Plain functions; the drift stage and the monitor DAG call them."""

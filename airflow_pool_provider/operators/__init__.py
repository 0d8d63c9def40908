from airflow_pool_provider.operators.chunked_copy import ChunkedTableCopyOperator

__all__ = ["ChunkedTableCopyOperator"]

"""How phases run on compute: an embedded or joined Ray cluster (ray_cluster) and Ray Train (ray_train).

Never imports dagster; ray is imported inside functions so importing this package stays fast.
"""

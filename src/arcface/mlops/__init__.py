"""The operations around the model: what keeps, judges, serves and ships it, over the ML library.

``store`` the model store (versions, the champion, lineage, promotion, rollback); ``gate`` the quality gate
that judges a run against the champion on the same pairs; ``serving`` the KServe model server and
``gallery`` its search index; ``tfjob`` the Training Operator launcher for training on several pods;
``images`` the container images' references; ``notify`` how a run's end is recorded and announced.
"""

"""The serving policy's home: what it is fitted on (``rows``), how each stage fits a value
(``fit``), the stage table that proposes a policy (``stages``) and what it reports
(``proposal``), and its versions, applied or rolled back (``store``). The value itself and what
it does to a row, ``ServingPolicy`` and ``serve``, are ``feedback_pipeline.served_policy``: a
leaf module, because the registry logs that code with every model and must not import this
package."""

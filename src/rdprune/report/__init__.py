"""The report: ``python -m rdprune.report RUN_DIRS... --out DIR`` (:mod:`.build`) reads run
directories (:mod:`.runs`), builds tables (:mod:`.tables`) with paired statistics (:mod:`.stats`)
and figures (:mod:`.plots`), and sets published numbers (:mod:`.published`) and the official
protocol (:mod:`.protocol`) beside them."""

"""Trials that attack the real `hearthbot run` process: crashes mid-turn and a fuzz soak.

They print figures and are run by hand; they are not part of the test suite (see README,
"Trials"). `mutations` is a small pure API the suite may reuse.
"""

"""A module nothing imports but test_predict_scene's preload test: whether a process holds it says whether
``predict_scene(..., preload=...)`` imported it there."""

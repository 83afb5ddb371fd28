"""Streamlit glue for the app: the only code besides `app.py` and `views/` that imports streamlit.

state    session + URL state (current model/data, compress knobs, measure settings)
cache    cached loaders (st.cache_resource / st.cache_data) and `clear()` for tests
uploads  uploads copied to disk at once, content-named, validated with one-line errors
launch   submit runs and sweeps to the store and start the background worker
view     rendering helpers: error guard, badges, number formats, sidebar, preview panel
charts   Altair chart builders for the model and compress screens
runs_view  glue for the Runs, Compare and Learn pages
"""

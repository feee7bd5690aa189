DROP TABLE open_tasks;
